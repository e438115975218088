"""Foreign objectives in the loss algebra: differentiable adapters and ``tt.wrap()``ed callables.

References are the same expressions written by hand with ``torch.nn.functional``
(values and gradients), and the losses on the concatenated data for epoch values.
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torchmetrics
from torch import Tensor, nn
from torch.nn import functional
from torcheval import metrics as eval_metrics

import _dist
import torchtally as tt
from torchtally.contrib.torcheval import TorchEvalAdapter, from_torcheval
from torchtally.contrib.torchmetrics import TorchMetricsAdapter, from_torchmetrics
from torchtally.errors import FormulaError, NameConflictError
from torchtally.losses import LossOperand, as_loss


def l1() -> tt.Loss[Tensor, Tensor]:
    return tt.Loss(functional.l1_loss, "L1")


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def batches(seed: int = 0, sizes: tuple[int, ...] = (4, 7, 2)) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, generator=generator), torch.randn(size, 3, generator=generator))
        for size in sizes
    ]


def concatenated(data: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    return torch.cat([o for o, _ in data]), torch.cat([t for _, t in data])


def close(found: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(found.double(), expected.double(), rtol=1e-5, atol=1e-6)


def check_against_hand_written(
    loss: Any, by_hand: Callable[[Tensor, Tensor], Tensor], data: list[tuple[Tensor, Tensor]]
) -> Tensor:
    """Forward equals the hand-written expression, with its gradient; the epoch mean of both."""
    total, count = torch.tensor(0.0, dtype=torch.float64), 0
    for outputs, targets in data:
        outputs = outputs.clone().requires_grad_(True)
        value = loss(outputs, targets)
        value.backward()
        reference = outputs.detach().clone().requires_grad_(True)
        expected = by_hand(reference, targets)
        expected.backward()
        close(value, expected)
        assert outputs.grad is not None and reference.grad is not None
        close(outputs.grad, reference.grad)
        total, count = total + expected.detach().double() * len(targets), count + len(targets)
    return total / count


# -- a differentiable torchmetrics adapter ------------------------------------------------------


def test_a_differentiable_adapter_is_a_component_of_the_formula() -> None:
    adapter = from_torchmetrics(torchmetrics.MeanSquaredError())
    loss = l1() + 0.1 * as_loss(adapter)
    assert loss.formula == "[L1] + 0.1 x [MeanSquaredError]"
    assert loss.higher_is_better is False
    data = batches()
    combined = check_against_hand_written(
        loss, lambda o, t: functional.l1_loss(o, t) + 0.1 * functional.mse_loss(o, t), data
    )
    outputs, targets = concatenated(data)
    computed = loss.compute()
    assert list(computed) == ["Combined Loss", "L1", "MeanSquaredError"]
    close(computed["Combined Loss"], combined)
    close(computed["L1"], functional.l1_loss(outputs, targets))
    close(computed["MeanSquaredError"], functional.mse_loss(outputs, targets))
    assert adapter.metric._update_count == 0  # the adapter given keeps its own state untouched
    # a loss on either side takes the adapter as it is
    for written, formula in ((l1() + adapter, "[L1] + [MeanSquaredError]"), (adapter + l1(), None)):
        assert written.formula == (formula or "[MeanSquaredError] + [L1]")
        outputs, targets = data[0]
        close(
            written(outputs, targets),
            functional.l1_loss(outputs, targets) + functional.mse_loss(outputs, targets),
        )


class CountingMSE(torchmetrics.MeanSquaredError):
    """Counts the batches it is updated with (in every copy: the count is the class's)."""

    updates: ClassVar[int] = 0

    def update(self, preds: Tensor, target: Tensor) -> None:
        type(self).updates += 1
        super().update(preds, target)


def test_an_adapter_used_twice_is_one_component_evaluated_once_per_batch() -> None:
    adapter = from_torchmetrics(CountingMSE(), "MSE")
    loss = l1() + adapter + as_loss(adapter) * l1()
    assert loss.formula == "[L1] + [MSE] + [MSE] x [L1]"
    assert [entry.name for entry in loss.components] == ["L1", "MSE"]
    outputs, targets = batches()[0]
    before = CountingMSE.updates
    value = loss(outputs, targets)
    assert CountingMSE.updates == before + 1
    mse = functional.mse_loss(outputs, targets)
    close(value, functional.l1_loss(outputs, targets) * (1 + mse) + mse)
    with pytest.raises(NameConflictError, match="'MSE' is given to two different callables"):
        loss + from_torchmetrics(torchmetrics.MeanSquaredError(squared=False), "MSE")


def test_a_composition_adapter_takes_part_under_a_name_of_its_own() -> None:
    both = from_torchmetrics(torchmetrics.MeanSquaredError() + torchmetrics.MeanAbsoluteError())
    with pytest.raises(NameConflictError, match="'Combined Loss' is reserved"):
        l1() + both
    loss = l1() + 0.5 * as_loss(both, "Errors")
    assert loss.formula == "[L1] + 0.5 x [Errors]"
    check_against_hand_written(
        loss,
        lambda o, t: (
            functional.l1_loss(o, t) + 0.5 * (functional.mse_loss(o, t) + functional.l1_loss(o, t))
        ),
        batches(),
    )


def test_an_adapter_keeps_its_direction() -> None:
    psnr = from_torchmetrics(torchmetrics.image.PeakSignalNoiseRatio(data_range=10.0), "PSNR")
    with pytest.raises(FormulaError, match="opposite directions"):
        l1() + psnr
    loss = l1() - 0.01 * as_loss(psnr)
    assert loss.higher_is_better is False and loss.higher_is_better_for("PSNR") is True
    assert as_loss(psnr, higher_is_better=False).higher_is_better is False


# -- tt.wrap()ed loss callables ----------------------------------------------------------------


def reward(outputs: Tensor, targets: Tensor) -> Tensor:
    return -(outputs - targets).pow(2).mean(1)  # per sample, higher is better


def test_wrapped_loss_callables_are_components() -> None:
    smooth = tt.wrap(nn.SmoothL1Loss())
    rewarded = tt.wrap(reward, higher_is_better=True)
    loss = l1() + 0.5 * as_loss(smooth) - 0.1 * as_loss(rewarded)
    assert loss.formula == "[L1] + 0.5 x [SmoothL1Loss] - 0.1 x [reward]"
    data = batches()
    combined = check_against_hand_written(
        loss,
        lambda o, t: (
            functional.l1_loss(o, t) + 0.5 * functional.smooth_l1_loss(o, t) - 0.1 * reward(o, t)
        ).mean(),
        data,
    )
    outputs, targets = concatenated(data)
    computed = loss.compute()
    close(computed["Combined Loss"], combined)
    close(computed["SmoothL1Loss"], functional.smooth_l1_loss(outputs, targets))
    close(computed["reward"], reward(outputs, targets).mean())
    with pytest.raises(FormulaError, match="opposite directions"):
        l1() + rewarded
    assert (l1() + tt.wrap(functional.mse_loss)).formula == "[L1] + [mse_loss]"
    assert (tt.wrap(functional.mse_loss) + l1()).formula == "[mse_loss] + [L1]"


def test_a_wrapped_callable_keeps_its_weight_callable() -> None:
    def first_only(outputs: Tensor, targets: Tensor) -> Tensor:
        weights = torch.zeros(len(targets))
        weights[0] = 1.0
        return weights

    loss = as_loss(tt.wrap(mae, weight=first_only))
    outputs, targets = batches()[0]
    close(loss(outputs, targets), mae(outputs[:1], targets[:1])[0])


# -- what cannot be a component -----------------------------------------------------------------


class Hits:
    """An object keeping its own state, with no forward."""

    def __init__(self) -> None:
        self.hits = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.hits += int((outputs.round() == targets).sum())

    def compute(self) -> int:
        return self.hits

    def reset(self) -> None:
        self.hits = 0


class Peak(tt.Objective[Tensor, Tensor]):
    aggregation = "max"

    def calculate(self, outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
        return {"Peak": (outputs - targets).abs().amax(1)}


REFUSED: dict[str, tuple[Callable[[], Any], str]] = {
    "non-differentiable": (
        lambda: from_torchmetrics(torchmetrics.classification.BinaryAccuracy()),
        "BinaryAccuracy declares is_differentiable=False",
    ),
    "torcheval": (
        lambda: from_torcheval(eval_metrics.MeanSquaredError()),
        "has no forward() giving a batch value",
    ),
    "stateful": (lambda: tt.wrap(Hits()), "has no forward() giving a batch value"),
    "metric": (lambda: tt.Metric(mae, "MAE"), "use loss | metric"),
    "hand-written": (Peak, "a hand-written objective is a metric"),
    "max-aggregated": (
        lambda: tt.wrap(mae, aggregation="max"),
        "aggregates 'mae' by 'max', and a loss component is a batch mean",
    ),
    "joined loss": (lambda: tt.Loss(mae, "MAE") | Peak(), "write the arithmetic on the losses"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_objects_that_cannot_be_components_are_refused_by_name(kind: str) -> None:
    make, reason = REFUSED[kind]
    obj = make()
    with pytest.raises(FormulaError) as caught:
        as_loss(obj)
    message = str(caught.value)
    assert message.startswith(f"{obj!r:.100} cannot be a loss component: ") and reason in message
    if kind != "joined loss":  # a joined loss composes (see test_composition)
        loss = l1()
        with pytest.raises(FormulaError) as caught:
            loss + obj
        assert str(caught.value).startswith("Loss [L1]: ") and reason in str(caught.value)
        outputs, targets = batches()[0]
        close(loss(outputs, targets), functional.l1_loss(outputs, targets))  # unchanged
        assert list(loss.compute()) == ["L1"]


def test_as_loss_returns_torchtally_losses_as_they_are() -> None:
    loss = l1()
    assert as_loss(loss) is loss
    with pytest.raises(FormulaError, match="already a loss"):
        as_loss(loss, "Other")
    with pytest.raises(FormulaError, match="is not an objective"):
        as_loss("mse")


# -- the operators on adapters themselves (the hook LossOperand) --------------------------------


OperandAdapter = TorchMetricsAdapter  # both adapters are loss operands
OperandEvalAdapter = TorchEvalAdapter


def test_the_adapters_and_wrapped_objects_are_loss_operands() -> None:
    for cls in (TorchMetricsAdapter, TorchEvalAdapter):
        assert issubclass(cls, LossOperand)


def test_loss_operand_gives_objects_the_operators() -> None:
    outputs, targets = batches()[0]
    mse = functional.mse_loss(outputs, targets)
    base = functional.l1_loss(outputs, targets)
    cases: list[tuple[Any, str, Tensor]] = [
        (
            l1() + 0.1 * OperandAdapter(torchmetrics.MeanSquaredError()),
            "[L1] + 0.1 x [M]",
            base + 0.1 * mse,
        ),
        (
            OperandAdapter(torchmetrics.MeanSquaredError()) * 0.1 + l1(),
            "[M] x 0.1 + [L1]",
            base + 0.1 * mse,
        ),
        (l1() - -OperandAdapter(torchmetrics.MeanSquaredError()), "[L1] - -[M]", base + mse),
        (OperandAdapter(torchmetrics.MeanSquaredError()) / 2, "[M] / 2", mse / 2),
        (OperandAdapter(torchmetrics.MeanSquaredError()) ** 2, "[M]^2", mse**2),
        (2 ** OperandAdapter(torchmetrics.MeanSquaredError()), "2^[M]", 2**mse),
        (1 - OperandAdapter(torchmetrics.MeanSquaredError()), "1 - [M]", 1 - mse),
        (sum([OperandAdapter(torchmetrics.MeanSquaredError()), l1()]), "[M] + [L1]", mse + base),
    ]
    for loss, formula, expected in cases:
        assert loss.formula == formula.replace("[M]", "[MeanSquaredError]")
        close(loss(outputs, targets), expected)
    with pytest.raises(FormulaError, match="has no forward"):
        0.1 * OperandEvalAdapter(eval_metrics.MeanSquaredError())


def test_adapters_and_wrapped_callables_read_as_written() -> None:
    loss = l1() + 0.1 * from_torchmetrics(torchmetrics.MeanSquaredError())
    assert loss.formula == "[L1] + 0.1 x [MeanSquaredError]"
    assert (0.5 * tt.wrap(functional.mse_loss)).formula == "0.5 x [mse_loss]"


# -- persistence and sync ---------------------------------------------------------------------


def composed() -> Any:
    return l1() + 0.1 * as_loss(from_torchmetrics(torchmetrics.MeanSquaredError()))


def test_a_loss_with_an_adapter_component_round_trips_mid_epoch() -> None:
    data = batches(sizes=(4, 7, 2, 5))
    uninterrupted = composed()
    for outputs, targets in data:
        uninterrupted(outputs, targets)
    interrupted = composed()
    for outputs, targets in data[:2]:
        interrupted(outputs, targets)
    buffer = io.BytesIO()
    torch.save(interrupted, buffer)
    buffer.seek(0)
    restored = composed()
    restored.load_state_dict(interrupted.state_dict())
    for resumed in (
        copy.deepcopy(interrupted),
        pickle.loads(pickle.dumps(interrupted)),
        torch.load(buffer, weights_only=False),
        restored,
    ):
        for outputs, targets in data[2:]:
            resumed(outputs, targets)
        for name, value in uninterrupted.compute().items():
            close(resumed.compute()[name], value)


SIZES = {0: (3, 5), 1: (2,)}  # uneven batches and numbers of batches


def sync_scenario(rank: int, world: int) -> dict[str, Any]:
    composition = composed()
    joined = l1() | from_torchmetrics(torchmetrics.MeanAbsoluteError(), "TM MAE")
    for outputs, targets in batches(seed=rank, sizes=SIZES[rank]):
        composition(outputs, targets)
        joined(outputs, targets)
    tt.sync_all(composition, joined)
    tt.sync_all(composition, joined)  # idempotent
    return {"composition": composition.compute(), "joined": joined.compute()}


@pytest.mark.timeout(120)
def test_losses_with_foreign_parts_sync_on_two_processes(tmp_path: Path) -> None:
    records = _dist.launch(2, "test_loss_algebra_adapters:sync_scenario", tmp_path, timeout=90.0)
    every = [pair for rank in range(2) for pair in batches(seed=rank, sizes=SIZES[rank])]
    outputs, targets = concatenated(every)
    sizes = [len(t) for _, t in every]
    values = [functional.l1_loss(o, t) + 0.1 * functional.mse_loss(o, t) for o, t in every]
    combined = sum(value.double() * size for value, size in zip(values, sizes, strict=True))
    for record in records:
        found = record["composition"]
        close(found["Combined Loss"], combined / sum(sizes))
        close(found["L1"], functional.l1_loss(outputs, targets))
        close(found["MeanSquaredError"], functional.mse_loss(outputs, targets))
        joined = record["joined"]
        assert list(joined) == ["L1", "TM MAE"]
        close(joined["L1"], functional.l1_loss(outputs, targets))
        close(joined["TM MAE"], functional.l1_loss(outputs, targets))


@pytest.mark.parametrize(
    ("seed", "component"),
    [
        # the component's private copy kept the last batch's graph: copy() raised torch's error
        (3, lambda: as_loss(from_torchmetrics(torchmetrics.MeanSquaredError()))),
        # 0.1 * metric is torchmetrics' CompositionalMetric, whose reset keeps its last value
        (4, lambda: torchmetrics.MeanSquaredError()),
    ],
    ids=["adapter component", "scaled torchmetrics metric"],
)
def test_a_loss_with_a_torchmetrics_component_copies_after_a_training_forward(
    seed: int, component: Callable[[], Any]
) -> None:
    first, second = batches(seed=seed, sizes=(4, 3))
    loss = tt.Loss(mae, "MAE") + 0.1 * component()
    loss(first[0].clone().requires_grad_(True), first[1]).backward()
    copies = [loss.copy(), copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))]
    every = concatenated([first, second])
    squared = [functional.mse_loss(*pair).expand(len(pair[0])) for pair in (first, second)]
    combined = (mae(*every) + 0.1 * torch.cat(squared)).mean()
    for each in (loss, *copies):
        returned = each(second[0].clone().requires_grad_(True), second[1])
        close(returned.detach(), mae(*second).mean() + 0.1 * functional.mse_loss(*second))
        close(each.compute()["Combined Loss"], combined)

"""Dense prediction: per-pixel losses and metrics, ignored pixels, detection-style targets.

References: the float64 values of ``torch.nn.functional.cross_entropy`` with
``ignore_index`` over the concatenated data, hand-written per-image sums, and
torchmetrics' ``MulticlassJaccardIndex`` for the dataset IoU.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.nn import functional

import torchtally as tt

IGNORE = 255
CLASSES = 3


def image_ce(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per image: the cross-entropy over its labelled pixels (NaN for an image with none)."""
    losses = functional.cross_entropy(outputs, targets, ignore_index=IGNORE, reduction="none")
    return losses.sum((1, 2)) / (targets != IGNORE).sum((1, 2))


def labelled(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per image: its number of labelled pixels."""
    return (targets != IGNORE).sum((1, 2)).float()


def penalty(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs.pow(2).mean((1, 2, 3))


def segmentation_batch(size: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, CLASSES, 4, 5, generator=generator)
    labels = torch.randint(0, CLASSES, (size, 4, 5), generator=generator)
    labels[torch.rand(size, 4, 5, generator=generator) < 0.3] = IGNORE
    labels[1] = IGNORE  # an image with no labelled pixel: its value is NaN, its weight 0
    return logits, labels


LOSSES: dict[str, Any] = {
    "Loss": lambda: tt.Loss(image_ce, "CE", weight=labelled),
    "composition": lambda: (
        tt.Loss(image_ce, "CE", weight=labelled) + tt.Loss(penalty, "Reg", weight=labelled)
    ),
    "DictLoss": lambda: tt.DictLoss(
        lambda o, t: {"CE": image_ce(o, t), "Reg": penalty(o, t)}, "CE", weight=labelled
    ),
}


@pytest.mark.parametrize("kind", list(LOSSES))
def test_forward_leaves_out_an_image_of_weight_0_as_compute_does(kind: str) -> None:
    # An image whose pixels are all ignored has the per-image value 0 / 0 = NaN and the
    # weight 0. compute() left it out (a value of weight exactly 0 is left out), but
    # forward returned NaN * 0 = NaN for the whole batch: forward and compute disagreed,
    # and the batch's loss, which is the mean over its labelled pixels, was lost.
    loss = LOSSES[kind]()
    logits, labels = segmentation_batch(3, seed=0)
    logits.requires_grad_(True)
    value = loss(logits, labels)
    expected = functional.cross_entropy(logits.double(), labels, ignore_index=IGNORE)
    if kind == "composition":
        kept = labelled(logits, labels).double()
        expected = expected + (penalty(logits, labels).double() * kept).sum() / kept.sum()
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(next(iter(loss.compute().values())).double(), expected.detach())
    value.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


def test_forward_of_weights_summing_to_0_is_still_nan_with_a_nan_value() -> None:
    # Leaving out the entries of weight 0 must not turn 0 / 0 into 0.
    loss = tt.Loss(image_ce, "CE", weight=labelled)
    logits, labels = segmentation_batch(2, seed=1)
    labels[:] = IGNORE
    assert math.isnan(loss(logits, labels).item())
    assert math.isnan(loss(logits, labels, weight=torch.zeros(2)).item())


def test_the_gradient_of_a_weight_of_0_is_that_of_the_hand_written_mean() -> None:
    # Leaving out values of weight 0 must not change the gradient with respect to a
    # weight of 0 for a finite value: d/dw_i of (v * w).sum() / w.sum() is
    # (v_i - mean) / w.sum(), not -mean / w.sum() as if v_i were 0.
    values = torch.tensor([[1.0], [5.0], [2.0]])
    weight = torch.tensor([1.0, 0.0, 3.0], requires_grad=True)
    loss = tt.Loss(lambda o, t: (o - t).abs().mean(1), "MAE")
    loss(values, torch.zeros(3, 1), weight=weight).backward()
    expected_weight = weight.detach().double().requires_grad_(True)
    by_hand = (values[:, 0].double() * expected_weight).sum() / expected_weight.sum()
    by_hand.backward()
    assert weight.grad is not None and expected_weight.grad is not None
    torch.testing.assert_close(weight.grad.double(), expected_weight.grad)


def per_sample(o: Tensor, t: Tensor) -> Tensor:
    return (o - t)[:, 0]


def finite_mean(o: Tensor, t: Tensor) -> Tensor:
    return (o - t)[o.isfinite()].mean()


@pytest.mark.parametrize("left_out", [math.nan, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("composed", [False, True])
def test_a_non_finite_value_of_weight_0_is_left_out_with_weights_that_require_grad(
    left_out: float, dtype: torch.dtype, composed: bool
) -> None:
    # Weights that require grad take another branch (nan_to_num, where) than plain ones
    # (masked_fill): the value, its gradients and compute() must match the float64 mean
    # over the samples of weight > 0. The gradient with respect to the weight of 0 of a
    # sample whose value is not finite is taken as if the value were 0 (documented).
    raw = torch.tensor([1.0, left_out, 2.0, 4.0])
    outputs = raw.to(dtype).unsqueeze(1).requires_grad_(True)
    weight = torch.tensor([1.0, 0.0, 3.0, 0.5], requires_grad=True)
    loss: Any = tt.Loss(per_sample, "V")
    if composed:  # a (B,) criterion from a per-sample component and a batch mean
        loss = loss + 0.5 * tt.Loss(finite_mean, "S")
    value = loss(outputs, torch.zeros(4, 1, dtype=dtype), weight=weight)
    value.backward()

    kept = torch.tensor([True, False, True, True])
    o64 = raw.double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    criterion = o64 + 0.5 * o64[kept].mean() if composed else o64
    criterion = torch.where(kept, criterion, 0.0)  # the left-out value counts 0 (no NaN x 0)
    expected = (criterion * w64).sum() / w64.sum()
    expected.backward()
    assert outputs.grad is not None and weight.grad is not None and w64.grad is not None
    tolerance = {"rtol": 1e-3, "atol": 1e-3} if dtype == torch.float16 else {}
    assert value.dtype == dtype
    torch.testing.assert_close(value.double(), expected.detach(), **tolerance)
    assert o64.grad is not None
    torch.testing.assert_close(outputs.grad[:, 0].double(), o64.grad, **tolerance)
    torch.testing.assert_close(weight.grad.double(), w64.grad, **tolerance)
    combined = loss.compute()["Combined Loss" if composed else "V"]
    torch.testing.assert_close(combined.double(), expected.detach(), **tolerance)


def test_the_documented_masked_mean_gives_the_pixel_mean_and_its_gradient() -> None:
    # docs/losses.md: a mask multiplied by hand, divided by the clamped count, keeps NaN
    # out of the model's gradient for an image with no labelled pixel (0 / 0 would not)
    def masked_mse(o: Tensor, t: Tensor) -> Tensor:
        mask = (t >= 0).to(o.dtype)
        return ((o - t) ** 2 * mask).sum(1) / mask.sum(1).clamp_min(1)

    loss = tt.Loss(masked_mse, "MSE", weight=lambda o, t: (t >= 0).sum(1))
    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(3, 4, generator=generator, requires_grad=True)
    targets = torch.rand(3, 4, generator=generator)
    targets[1] = -1.0  # nothing labelled
    targets[0, :2] = -1.0
    loss(outputs, targets).backward()
    wide = outputs.detach().double().requires_grad_(True)
    mask = targets >= 0
    expected = (wide - targets.double())[mask].pow(2).mean()  # every labelled pixel at once
    expected.backward()
    assert outputs.grad is not None and wide.grad is not None
    torch.testing.assert_close(outputs.grad.double(), wide.grad)
    torch.testing.assert_close(loss.compute()["MSE"].double(), expected.detach())


def boxes(count: int) -> Tensor:
    return torch.rand(count, 4)


def detections(size: int) -> list[dict[str, Tensor]]:
    return [{"boxes": boxes(2), "scores": torch.rand(2)} for _ in range(size)]


def test_per_image_box_tensors_of_equal_counts_are_not_read_as_a_batch_of_boxes() -> None:
    # One tensor of boxes per image: refused when the counts differ, but with one box in
    # each of 4 images the list read as a batch of 1 (the box count), so a batch mean of 4
    # images weighed 1: 0.2 instead of 0.5 below. The outputs (4 images) say otherwise.
    metric = tt.Metric(lambda o, t: torch.tensor(1.0 if isinstance(t, list) else 0.0), "M")
    with pytest.raises(tt.errors.BatchSizeError, match=r"'M'.*\b1\b.*\b4\b"):
        metric.update(detections(4), [boxes(1) for _ in range(4)])
    with pytest.raises(tt.errors.BatchSizeError, match="weight="):
        metric.update(torch.zeros(3, 3), (boxes(2), boxes(2), boxes(2)))
    with pytest.raises(tt.errors.BatchSizeError):
        metric.update(torch.zeros(4, 3), {"boxes": [boxes(1) for _ in range(4)]})
    with pytest.warns(tt.errors.ComputedBeforeUpdatedWarning):
        assert math.isnan(metric.compute()["M"])  # nothing was counted
    weighted = tt.Metric(
        lambda o, t: torch.tensor(1.0 if isinstance(t, list) else 0.0),
        "M",
        weight=lambda o, t: torch.ones(len(t)),
    )
    weighted.update(detections(4), [boxes(1) for _ in range(4)])
    weighted.update(torch.zeros(4), torch.zeros(4))
    assert weighted.compute()["M"].item() == 0.5


def test_tensors_that_share_the_batch_dimension_still_give_it() -> None:
    # several targets of one batch (labels and boxes), with outputs of that batch or none
    metric = tt.Metric(lambda o, t: t[0].float(), "Label")
    metric.update(torch.zeros(3, 5), [torch.tensor([1, 2, 3]), boxes(3)])
    metric.update(None, (torch.tensor([4]), boxes(1)))
    assert metric.compute()["Label"].item() == 2.5


def test_per_image_tensors_beside_outputs_whose_first_entry_is_a_0_d_loss_are_refused() -> None:
    # A model's output dict often starts with its 0-d loss ({'loss': ..., 'logits': (B, C)},
    # as Hugging Face models return it): the outputs' batch was then no clue, and a list of
    # one (1, H, W) mask per image of 4 images read as a batch of 1, so a batch mean of 4
    # images weighed 1: 0.2 instead of 0.5 below.
    metric = tt.Metric(lambda o, t: torch.tensor(1.0 if isinstance(t, dict) else 0.0), "M")
    outputs = {"loss": torch.tensor(0.3), "logits": torch.zeros(4, 3)}
    masks = {"mask_labels": [torch.zeros(1, 2, 2) for _ in range(4)]}
    with pytest.raises(tt.errors.BatchSizeError, match=r"'M'.*\b1\b.*\b4\b"):
        metric.update(outputs, masks)
    with pytest.warns(tt.errors.ComputedBeforeUpdatedWarning):
        assert math.isnan(metric.compute()["M"])  # nothing was counted
    weighted = tt.Metric(
        lambda o, t: torch.tensor(1.0 if isinstance(t, dict) else 0.0),
        "M",
        weight=lambda o, t: torch.ones(4) if isinstance(t, dict) else None,
    )
    weighted.update(outputs, masks)
    weighted.update(torch.zeros(4), torch.zeros(4))
    assert weighted.compute()["M"].item() == 0.5
    # targets of the outputs' batch beside such outputs are read as before
    labels = tt.Metric(lambda o, t: t[0].float(), "Label")
    labels.update(outputs, (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4, 2)))
    labels.update({"loss": torch.tensor(0.1), "logits": torch.zeros(2, 3)}, [torch.ones(2)] * 2)
    assert labels.compute()["Label"].item() == 2.0


def test_sequence_first_outputs_beside_batch_first_targets_give_the_targets_batch() -> None:
    # (T, B, V) outputs of an RNN (batch_first=False) and a tuple of batch-first targets:
    # the outputs' T is not the number of target tensors, so the targets' B stands.
    metric = tt.Metric(lambda o, t: t[0].float(), "Label")
    lengths = torch.tensor([5, 2, 9])
    metric.update(torch.zeros(7, 3, 11), (torch.tensor([1.0, 2.0, 3.0]), lengths))
    metric.update(torch.zeros(7, 1, 11), (torch.tensor([6.0]), lengths[:1]))
    assert metric.compute()["Label"].item() == 3.0


# -- the dataset IoU recipe of docs/metrics.md, against torchmetrics --------------------------


def overlaps(outputs: Tensor, targets: Tensor, classes: int) -> dict[str, Tensor]:
    predicted, kept = outputs.argmax(1), targets != IGNORE
    counts = {}
    for c in range(classes):
        is_predicted, is_true = (predicted == c) & kept, targets == c
        counts[f"I{c}"] = (is_predicted & is_true).sum()
        counts[f"U{c}"] = (is_predicted | is_true).sum()
    return counts


class IoU(tt.MetricCollection):
    aggregation = "sum"

    def __init__(self, classes: int) -> None:
        super().__init__(lambda o, t: overlaps(o, t, classes))
        self.classes = classes

    def finalize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        names = range(self.classes)
        intersection = torch.stack([values[f"I{c}"] for c in names]).double()
        union = torch.stack([values[f"U{c}"] for c in names]).double()
        iou = intersection / union
        return {"mIoU": iou.nanmean(), "IoU": iou}


@pytest.mark.parametrize("classes", [3, 4])  # 4: as many classes as images in a batch
def test_the_documented_iou_is_torchmetrics_dataset_iou(classes: int) -> None:
    from torchmetrics.classification import MulticlassJaccardIndex

    generator = torch.Generator().manual_seed(classes)
    iou = IoU(classes)
    macro = MulticlassJaccardIndex(classes, average="macro", ignore_index=IGNORE)
    per_class = MulticlassJaccardIndex(classes, average="none", ignore_index=IGNORE)
    batch_ious = []
    for size in (4, 4, 1):  # an uneven last batch
        logits = torch.randn(size, classes, 6, 7, generator=generator)
        labels = torch.randint(0, classes - 1, (size, 6, 7), generator=generator)  # one unseen
        labels[torch.rand(size, 6, 7, generator=generator) < 0.25] = IGNORE
        logits[:, classes - 1] -= 10  # the unseen class is never predicted either
        iou.update(logits, labels)
        macro.update(logits, labels)
        per_class.update(logits, labels)
        batch_ious.append(
            MulticlassJaccardIndex(classes, average="macro", ignore_index=IGNORE)(logits, labels)
        )
    computed = iou.compute()
    torch.testing.assert_close(computed["mIoU"].float(), macro.compute())
    expected = per_class.compute().double()
    expected[classes - 1] = math.nan  # torchmetrics reports 0 for a class never seen
    torch.testing.assert_close(computed["IoU"], expected, equal_nan=True, rtol=1e-6, atol=0)
    naive = torch.stack(batch_ious).mean()  # the mean of batch ratios is another number
    assert abs(float(naive) - float(computed["mIoU"])) > 1e-3


def test_per_pixel_and_per_class_values_and_pixel_masks_are_refused() -> None:
    logits, labels = segmentation_batch(3, seed=2)
    pixels = tt.Metric(
        lambda o, t: functional.cross_entropy(o, t, ignore_index=IGNORE, reduction="none"), "P"
    )
    classes = tt.Metric(lambda o, t: o.mean((2, 3)), "PerClass")
    for metric, shape in ((pixels, r"\(3, 4, 5\)"), (classes, r"\(3, 3\)")):
        with pytest.raises(tt.errors.ResultShapeError, match=shape):
            metric.update(logits, labels)
    masked = tt.Metric(image_ce, "CE")
    with pytest.raises(tt.errors.WeightError, match=r"'CE'.*\(3, 4, 5\)"):
        masked.update(logits, labels, weight=(labels != IGNORE).float())


def test_fields_of_one_batch_beside_as_many_steps_are_refused_with_both_remedies() -> None:
    # (T, B, C) outputs with T = 2 beside two batch-first target fields: indistinguishable from
    # two per-sample tensors beside outputs of 2 samples, so refused; the error names both ways.
    metric = tt.Metric(lambda o, t: t[0], "M")
    with pytest.raises(tt.errors.BatchSizeError, match=r"len\(targets\).*len\(targets\[0\]\)"):
        metric.update(torch.zeros(2, 8, 3), (torch.zeros(8), torch.zeros(8, 2)))
    weighted = tt.Metric(lambda o, t: t[0], "M", weight=lambda o, t: torch.ones(len(t[0])))
    weighted.update(torch.zeros(2, 8, 3), (torch.arange(8.0), torch.zeros(8, 2)))
    assert weighted.compute()["M"].item() == 3.5

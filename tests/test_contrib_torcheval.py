"""from_torcheval: values, state, and the sync built on torcheval's own state merging.

The sync's combination step (``sync_merge``) is pure, so it is checked here in one
process by feeding it the exported states of several adapters as if they were ranks;
tests/test_contrib_distributed.py runs it across real processes.
"""

from __future__ import annotations

import copy
import importlib
import logging
import pickle
import re
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import pytest
import torch
from torch import Tensor
from torcheval import metrics as eval_metrics
from torcheval.metrics import Metric

import torchtally as tt
from _sync import simulate_sync  # tests/_sync.py
from torchtally import errors
from torchtally import protocols as p
from torchtally._conventions import normalize_result
from torchtally.contrib.torcheval import TorchEvalAdapter, from_torcheval
from torchtally.sync import SyncParticipant

tensor_a = torch.ones(1, 1, dtype=torch.float)
tensor_b = 3 * torch.ones(1, 1, dtype=torch.float)


def test_drytorch_sync_example_is_quiet_outside_ddp(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    eval_metric = eval_metrics.MeanSquaredError()
    eval_metric.update(tensor_a, tensor_b)
    eval_metric_with_sync = from_torcheval(eval_metric)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.DEBUG):
            eval_metric_with_sync.sync()
            tt.sync_all(eval_metric_with_sync)
    assert caplog.records == []
    assert capsys.readouterr() == ("", "")
    assert eval_metric_with_sync.compute() == {"MeanSquaredError": torch.tensor(4.0)}
    assert isinstance(eval_metric_with_sync, p.ObjectiveProtocol)
    assert isinstance(eval_metric_with_sync, SyncParticipant)


def binary_batches(sizes: list[int], seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(n, generator=generator), torch.randint(0, 2, (n,), generator=generator))
        for n in sizes
    ]


def cat(batches: list[Any]) -> tuple[Tensor, Tensor]:
    return torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches])


def test_single_metric_and_dict_values_match_the_concatenated_data() -> None:
    batches = binary_batches([6, 1, 4])
    single = from_torcheval(eval_metrics.BinaryAUROC(), "AUROC")
    several = from_torcheval(
        {"AUROC": eval_metrics.BinaryAUROC(), "Accuracy": eval_metrics.BinaryAccuracy()}
    )
    for batch in batches:
        single.update(*batch)
        several.update(*batch)
    outputs, targets = cat(batches)
    auroc = eval_metrics.BinaryAUROC().update(outputs, targets).compute()
    accuracy = eval_metrics.BinaryAccuracy().update(outputs, targets).compute()
    assert single.compute() == {"AUROC": auroc}
    assert several.compute() == {"AUROC": auroc, "Accuracy": accuracy}
    assert from_torcheval(eval_metrics.BinaryAccuracy()).name == "BinaryAccuracy"


def test_state_dict_copy_pickle_to_and_reset() -> None:
    batches = binary_batches([3, 5, 2], seed=1)
    metric = from_torcheval(
        {"AUROC": eval_metrics.BinaryAUROC(), "Accuracy": eval_metrics.BinaryAccuracy()}
    )
    metric.update(*batches[0])
    restored = from_torcheval(
        {"AUROC": eval_metrics.BinaryAUROC(), "Accuracy": eval_metrics.BinaryAccuracy()}
    )
    restored.load_state_dict(metric.state_dict())
    others = [restored, pickle.loads(pickle.dumps(metric)), copy.deepcopy(metric), metric.copy()]
    for adapter in [metric, *others]:
        for batch in batches[1:]:
            adapter.update(*batch)
    for other in others:
        assert other.compute() == metric.compute()
    assert metric.to("cpu") is metric
    before = metric.compute()
    for device in (torch.float16, "meta"):  # 'meta' lost every value, a dtype lowered it
        with pytest.raises(errors.InvalidArgumentError, match=r"to\(\) takes a device"):
            metric.to(device)
    assert metric.compute() == before
    with pytest.raises(errors.StateDictError, match="Accuracy"):
        from_torcheval({"AUROC": eval_metrics.BinaryAUROC()}).load_state_dict(metric.state_dict())
    metric.reset()
    metric.update(*batches[0])
    assert (
        metric.compute()
        == from_torcheval(
            {
                "AUROC": eval_metrics.BinaryAUROC().update(*batches[0]),
                "Accuracy": eval_metrics.BinaryAccuracy().update(*batches[0]),
            }
        ).compute()
    )


# -- keyword arguments: a dict's metrics each get them all ----------------------------------------


def test_a_keyword_a_metric_of_a_dict_does_not_take_is_refused_changing_nothing() -> None:
    # The MSE took the batch, then BinaryAccuracy raised: the refused call changed the state.
    outputs, targets = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 1.0])
    adapter = from_torcheval(
        {"MSE": eval_metrics.MeanSquaredError(), "Accuracy": eval_metrics.BinaryAccuracy()}
    )
    adapter.update(outputs, targets)
    before = adapter.compute()
    with pytest.raises(errors.InvalidArgumentError, match=r"\['Accuracy'\].*'sample_weight'"):
        adapter.update(outputs, targets, sample_weight=torch.ones(3))
    with pytest.raises(errors.WeightError, match=r"\['MSE', 'Accuracy'\].*'weight'"):
        adapter.update(outputs, targets, weight=torch.ones(3))
    assert adapter.compute() == before
    weighted = from_torcheval(
        {"A": eval_metrics.MeanSquaredError(), "B": eval_metrics.MeanSquaredError()}
    )
    weight = torch.tensor([1.0, 2.0, 0.5])
    weighted.update(outputs, targets, sample_weight=weight)  # every metric takes it
    reference = eval_metrics.MeanSquaredError().update(outputs, targets, sample_weight=weight)
    assert weighted.compute() == {"A": reference.compute(), "B": reference.compute()}


def test_positional_arguments_a_metric_of_a_dict_does_not_take_are_refused_changing_nothing() -> (
    None
):
    # BinaryAUROC took the third positional argument (its weight), then the MSE raised.
    outputs, targets = torch.tensor([0.1, 0.8, 0.4]), torch.tensor([0.0, 1.0, 1.0])
    adapter = from_torcheval(
        {"AUROC": eval_metrics.BinaryAUROC(), "MSE": eval_metrics.MeanSquaredError()}
    )
    adapter.update(outputs, targets)
    before = adapter.compute()
    with pytest.raises(errors.InvalidArgumentError, match=r"\['MSE'\].*3 positional"):
        adapter.update(outputs, targets, torch.ones(3))
    assert adapter.compute() == before
    assert len(adapter.metric["AUROC"].inputs) == 1  # one batch, as the MSE's


def test_a_metric_refusing_a_batch_an_earlier_one_took_stops_the_dict_reporting() -> None:
    # The MSE took the (2, 1) batch, then BinaryAccuracy refused it: compute() reported an MSE
    # over two batches beside an accuracy over one.
    outputs, targets = torch.tensor([0.2, 0.9]), torch.tensor([0.0, 1.0])
    adapter = from_torcheval(
        {"MSE": eval_metrics.MeanSquaredError(), "Accuracy": eval_metrics.BinaryAccuracy()}
    )
    adapter.update(outputs, targets)
    with pytest.raises(errors.MetricCallError, match=r"Accuracy.*after MSE took it.*out of step"):
        adapter.update(outputs[:, None], targets[:, None])
    for refused in (
        adapter.compute,
        adapter.state_dict,
        adapter.sync_identity,
        lambda: copy.deepcopy(adapter).merge_state(adapter),
        lambda: from_torcheval(
            {"MSE": eval_metrics.MeanSquaredError(), "Accuracy": eval_metrics.BinaryAccuracy()}
        ).merge_state(adapter),
    ):
        with pytest.raises(errors.MetricCallError, match="out of step"):
            refused()
    adapter.reset()  # back in step
    adapter.update(outputs, targets)
    reference = eval_metrics.MeanSquaredError().update(outputs, targets).compute()
    assert adapter.compute() == {"MSE": reference, "Accuracy": torch.tensor(1.0)}


# -- nothing the user can reach shares storage with a state ----------------------------------------


def test_changing_inputs_after_update_changes_no_value() -> None:
    batches = binary_batches([4, 3], seed=2)
    reference = eval_metrics.BinaryAUROC().update(*(part.clone() for part in cat(batches)))
    adapter = from_torcheval(eval_metrics.BinaryAUROC())
    for outputs, targets in batches:
        adapter.update(outputs, targets)  # torcheval keeps these very tensors in a list
        outputs.copy_(1 - outputs)  # the user reuses the buffer (AUROC would become 1 - AUROC)
    assert adapter.compute() == {"BinaryAUROC": reference.compute()}


def test_changing_a_computed_value_changes_no_value() -> None:
    adapter = from_torcheval(eval_metrics.Sum(), "Sum")  # compute returns the state itself
    adapter.metric.update(torch.tensor([3.0, 4.0]))
    adapter.compute()["Sum"].add_(100)
    assert adapter.compute() == {"Sum": torch.tensor(7.0, dtype=torch.float64)}


# -- options: one class built with other arguments holds states that must not mix -----------------


def test_a_state_saved_with_other_options_is_refused_changing_nothing() -> None:
    # A 3-class macro accuracy's state loaded into a 4-class one reported 0.75, into a micro one
    # a vector [0.5, 1.0, nan]: torcheval's load_state_dict checks no option.
    macro = from_torcheval(eval_metrics.MulticlassAccuracy(num_classes=3, average="macro"), "A")
    macro.update(torch.eye(3), torch.tensor([0, 1, 0]))
    for other in (
        eval_metrics.MulticlassAccuracy(num_classes=4, average="macro"),
        eval_metrics.MulticlassAccuracy(num_classes=3),
    ):
        target = from_torcheval(other, "A")
        with pytest.raises(errors.StateDictError, match=r"other options \((average|num_classes)"):
            target.load_state_dict(macro.state_dict())
        assert torch.isnan(target.compute()["A"]).all()  # still never updated
    fresh = from_torcheval(eval_metrics.MulticlassAccuracy(num_classes=3, average="macro"), "A")
    older = macro.state_dict()  # saved before options were saved: loaded as it was
    del older["options"]
    fresh.load_state_dict(older)
    assert torch.equal(fresh.compute()["A"], macro.compute()["A"])


def test_editing_the_options_of_a_returned_state_changes_not_the_adapter() -> None:
    # state_dict()["options"] was the adapter's own dict: an edit to the returned state changed
    # the options it checks loads and other ranks against (a good state was then refused).
    def accuracy() -> Any:
        return eval_metrics.MulticlassAccuracy(num_classes=3, average="macro")

    adapter = from_torcheval(accuracy(), "A")
    identity = copy.deepcopy(adapter.sync_identity())
    returned = adapter.state_dict()
    returned["options"]["A"]["num_classes"] = 4
    assert adapter.sync_identity() == identity
    good = from_torcheval(accuracy(), "A")
    good.update(torch.eye(3), torch.tensor([0, 1, 0]))
    adapter.load_state_dict(good.state_dict())
    assert adapter.compute() == {
        "A": accuracy().update(torch.eye(3), torch.tensor([0, 1, 0])).compute()
    }


def test_ranks_with_other_options_are_refused_at_sync() -> None:
    # Rank 0 merged rank 1's per-class counts into its micro counts by broadcasting (0.6722).
    ranks = [
        from_torcheval(eval_metrics.MulticlassAccuracy(num_classes=3), "A"),
        from_torcheval(eval_metrics.MulticlassAccuracy(num_classes=3, average="macro"), "A"),
    ]
    for adapter in ranks:
        adapter.update(torch.eye(3), torch.tensor([0, 1, 0]))
    with pytest.raises(errors.SyncError, match="macro"):
        simulate_sync([[adapter] for adapter in ranks])


def test_an_attribute_the_metric_changes_while_updating_is_no_option() -> None:
    # WindowedMeanSquaredError counts its updates in a plain attribute (next_inserted).
    batches = [(torch.tensor([float(i)]), torch.zeros(1)) for i in range(1, 5)]
    ranks = [from_torcheval(eval_metrics.WindowedMeanSquaredError(max_num_updates=3)) for _ in "ab"]
    for batch in batches[:3]:
        ranks[0].update(*batch)
    ranks[1].update(*batches[3])
    restored = from_torcheval(eval_metrics.WindowedMeanSquaredError(max_num_updates=3))
    restored.load_state_dict(ranks[0].state_dict())
    assert restored.compute() == ranks[0].compute()
    simulate_sync([[adapter] for adapter in ranks])
    merged = eval_metrics.WindowedMeanSquaredError(max_num_updates=3)
    for batch in batches[:3]:
        merged.update(*batch)
    other = eval_metrics.WindowedMeanSquaredError(max_num_updates=3).update(*batches[3])
    expected = normalize_result(
        merged.merge_state([other]).compute(), "WindowedMeanSquaredError", "reference"
    )
    assert ranks[1].compute() == expected


# -- merge_state -------------------------------------------------------------------------------


def tensors(metric: Metric) -> list[Tensor]:
    states = metric.state_dict().values()
    return [part for state in states for part in (state if isinstance(state, list) else [state])]


def test_merge_state_equals_the_metric_on_the_concatenated_data() -> None:
    # The adapters had no merge_state: AttributeError.
    batches = binary_batches([4, 3, 5], seed=3)

    def build() -> TorchEvalAdapter:
        return from_torcheval(
            {"AUROC": eval_metrics.BinaryAUROC(), "Accuracy": eval_metrics.BinaryAccuracy()}
        )

    mine, theirs = build(), build()
    mine.update(*batches[0])
    for batch in batches[1:]:
        theirs.update(*batch)
    theirs_before = theirs.compute()
    mine.merge_state(theirs)
    outputs, targets = cat(batches)
    expected = {
        "AUROC": eval_metrics.BinaryAUROC().update(outputs, targets).compute(),
        "Accuracy": eval_metrics.BinaryAccuracy().update(outputs, targets).compute(),
    }
    assert mine.compute() == expected
    assert theirs.compute() == theirs_before
    for key in ("AUROC", "Accuracy"):  # nothing shared with the other adapter
        assert not {part.data_ptr() for part in tensors(mine.metric[key])} & {
            part.data_ptr() for part in tensors(theirs.metric[key])
        }
    with pytest.raises(errors.IncompatibleStateError, match="cannot merge"):
        mine.merge_state(from_torcheval({"AUROC": eval_metrics.BinaryAUROC()}))
    assert mine.compute() == expected


# -- the sync's combination step, ranks simulated in one process ----------------------------------


def simulated_sync(adapters: list[TorchEvalAdapter]) -> None:
    """What sync_all does on every rank, with ``adapters[r]`` as rank r's adapter."""
    simulate_sync([[adapter] for adapter in adapters])


class LabelCounts(Metric[Tensor]):
    """A metric with a dict state (int keys) and an int state."""

    def __init__(self) -> None:
        super().__init__()
        self._add_state("counts", {})
        self._add_state("batches", 0)

    @torch.inference_mode()
    def update(self, outputs: Tensor, targets: Tensor) -> LabelCounts:
        for label in targets.tolist():
            self.counts[label] = self.counts.get(label, torch.tensor(0)) + 1
        self.batches += 1
        return self

    @torch.inference_mode()
    def compute(self) -> Tensor:
        return torch.tensor(
            [float(self.counts.get(label, 0)) for label in (0, 1)] + [float(self.batches)]
        )

    @torch.inference_mode()
    def merge_state(self, metrics: Iterable[LabelCounts]) -> LabelCounts:
        for metric in metrics:
            for label, count in metric.counts.items():
                self.counts[label] = self.counts.get(label, torch.tensor(0)) + count
            self.batches += metric.batches
        return self


FACTORIES = {
    "mse": lambda: eval_metrics.MeanSquaredError(),
    "auroc (list states)": lambda: eval_metrics.BinaryAUROC(),
    "binary accuracy": lambda: eval_metrics.BinaryAccuracy(),
    "dict state and int state": lambda: LabelCounts(),
    "dict of metrics": lambda: {
        "mse": eval_metrics.MeanSquaredError(),
        "auroc": eval_metrics.BinaryAUROC(),
    },
}


def reference_value(factory: Any, batches: list[Any]) -> dict[str, Tensor]:
    adapter = from_torcheval(factory())
    for batch in batches:
        adapter.update(*batch)
    return adapter.compute()


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_simulated_sync_equals_the_metric_on_the_concatenated_data(kind: str) -> None:
    factory = FACTORIES[kind]
    shards = [binary_batches([4, 3], seed=2), binary_batches([5], seed=3), []]
    adapters = [from_torcheval(factory()) for _ in shards]
    for adapter, batches in zip(adapters, shards, strict=True):
        for batch in batches:
            adapter.update(*batch)
    everything = [batch for batches in shards for batch in batches]
    expected = reference_value(factory, everything)

    simulated_sync(adapters)
    for adapter in adapters:
        synced = adapter.compute()
        assert synced.keys() == expected.keys()
        for name in expected:
            assert torch.allclose(synced[name], expected[name], atol=1e-6), (kind, name)
    simulated_sync(adapters)  # twice == once
    for name in expected:
        assert torch.allclose(adapters[2].compute()[name], expected[name], atol=1e-6)

    # an update drops the synced view (local again) and counts once at the next sync
    extra = binary_batches([6], seed=4)[0]
    adapters[1].update(*extra)
    local = reference_value(factory, [*shards[1], extra])
    for name in local:
        assert torch.allclose(adapters[1].compute()[name], local[name], atol=1e-6)
    simulated_sync(adapters)
    expected = reference_value(factory, [*everything, extra])
    for adapter in adapters:
        for name in expected:
            assert torch.allclose(adapter.compute()[name], expected[name], atol=1e-6), (kind, name)


def test_float_states_merge_with_the_metric_s_own_rule() -> None:
    # Throughput merges item counts by sum and elapsed times by max: its rule, not ours.
    adapters = [from_torcheval(eval_metrics.Throughput()) for _ in range(2)]
    adapters[0].update(100, 2.0)
    adapters[1].update(60, 4.0)
    simulated_sync(adapters)
    assert adapters[0].compute() == adapters[1].compute() == {"Throughput": torch.tensor(40.0)}


def test_sync_errors_name_every_rank() -> None:
    mse, auroc = (
        from_torcheval(eval_metrics.MeanSquaredError()),
        from_torcheval(eval_metrics.BinaryAUROC()),
    )
    with pytest.raises(errors.SyncError, match=r"objective 0 differs") as raised:
        simulate_sync([[mse], [auroc]])
    assert "rank 0 syncs from_torcheval(MeanSquaredError" in str(raised.value)
    assert "rank 1 syncs from_torcheval(BinaryAUROC" in str(raised.value)

    class Tuples(LabelCounts):
        pass

    bad = from_torcheval(Tuples())
    bad.metric.counts[(1, 2)] = torch.tensor(1)  # type: ignore[union-attr]
    with pytest.raises(errors.SyncError, match=r"key \(1, 2\)"):
        bad.sync_export(drop_last=False)


def test_rejects_other_objects() -> None:
    import torchmetrics

    with pytest.raises(errors.UnsupportedObjectError):
        from_torcheval(torchmetrics.MeanSquaredError())  # type: ignore[arg-type]
    with pytest.raises(errors.UnsupportedObjectError):
        from_torcheval({})
    with pytest.raises(errors.UnsupportedObjectError, match="'b'"):
        from_torcheval({"a": eval_metrics.MeanSquaredError(), "b": 3})  # type: ignore[dict-item]
    with pytest.raises(errors.InvalidNameError):
        from_torcheval({1: eval_metrics.MeanSquaredError()})  # type: ignore[dict-item]


def test_missing_torcheval_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torcheval.metrics", None)
    monkeypatch.delitem(sys.modules, "torchtally.contrib.torcheval")
    with pytest.raises(ImportError, match=r'pip install "torchtally\[torcheval\]"'):
        importlib.import_module("torchtally.contrib.torcheval")


class FailingCompute(eval_metrics.MeanSquaredError):
    def compute(self) -> Tensor:
        raise ValueError("no value")


def test_a_foreign_compute_error_is_the_librarys_own_naming_the_adapter() -> None:
    # A metric's compute() raising a bare ValueError came through the adapter as it was.
    failing = from_torcheval({"MSE": FailingCompute()})
    failing.update(torch.zeros(2), torch.ones(2))
    with pytest.raises(tt.errors.MetricCallError, match=r"FailingCompute\.compute.*ValueError"):
        failing.compute()


def test_a_foreign_update_error_is_the_librarys_own_naming_the_adapter() -> None:
    # update(..., weight=) raised torcheval's bare TypeError.
    shards = [(torch.tensor([0.0, 1.0]), torch.zeros(2)), (torch.tensor([3.0]), torch.zeros(1))]
    adapters = [from_torcheval(eval_metrics.MeanSquaredError()) for _ in shards]
    for adapter, batch in zip(adapters, shards, strict=True):
        adapter.update(*batch)
    simulated_sync(adapters)
    with pytest.raises(tt.errors.MetricCallError, match=r"MeanSquaredError\.update.*TypeError"):
        adapters[0].update(torch.ones(2), torch.zeros(2), weight=torch.ones(2))
    assert adapters[0].compute()["MeanSquaredError"].item() == pytest.approx(10 / 3)  # synced


# -- compute() before any update: the library's warning and NaN, as a native objective ------------


def test_compute_before_any_update_warns_and_is_nan_for_every_name() -> None:
    # A MeanSquaredError reported NaN and a Sum 0.0 without a word; BinaryAUROC raised.
    for adapter, names in (
        (from_torcheval(eval_metrics.MeanSquaredError()), ["MeanSquaredError"]),
        (from_torcheval(eval_metrics.Sum(), "Sum"), ["Sum"]),
        (
            from_torcheval({"AUROC": eval_metrics.BinaryAUROC(), "MSE": eval_metrics.Sum()}),
            ["AUROC", "MSE"],
        ),
    ):
        with pytest.warns(errors.ComputedBeforeUpdatedWarning, match=re.escape(repr(adapter))):
            values = adapter.compute()
        assert list(values) == names and all(torch.isnan(v) for v in values.values())
        restored = copy.deepcopy(adapter)
        restored.load_state_dict(adapter.state_dict())
        with pytest.warns(errors.ComputedBeforeUpdatedWarning):
            restored.compute()
    exact = from_torcheval(eval_metrics.MeanSquaredError())
    exact.update(torch.ones(2), torch.ones(2))  # seen, and zero
    summed = from_torcheval(eval_metrics.Sum().update(torch.tensor([3.0])))  # updated before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert exact.compute() == {"MeanSquaredError": torch.tensor(0.0)}
        assert summed.compute() == {"Sum": torch.tensor(3.0, dtype=torch.float64)}
    for adapter in (exact, summed):
        adapter.reset()
        with pytest.warns(errors.ComputedBeforeUpdatedWarning):
            adapter.compute()

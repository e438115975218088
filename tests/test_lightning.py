"""examples/lightning_module.py: trains on CPU, logs, checkpoints its objectives, resumes."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

pytest.importorskip("lightning")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "lightning_module.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lightning_module_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Lightning's hyperparameter saving looks classes up
    spec.loader.exec_module(module)
    return module


example = load_example()

QUIET: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False}


def values(objective: Any) -> dict[str, float]:
    return {name: float(value) for name, value in objective.compute().items()}


@pytest.mark.timeout(120)
def test_two_epochs_then_a_resume_restores_the_objectives_and_the_tracker(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    first, run = example.fit(2, tmp_path / "first", **QUIET)
    assert run.current_epoch == 2
    tracker = first.tracker
    assert len(tracker.history) == 2  # Lightning's sanity-check batches are not recorded
    assert tracker.higher_is_better  # accuracy: 'max', from the metric
    checkpoint_callback = run.checkpoint_callback
    assert checkpoint_callback.mode == "max" and checkpoint_callback.monitor == "val/Accuracy"
    assert checkpoint_callback.best_model_score.item() == pytest.approx(tracker.best_value)

    # Logged with self.log_dict(tt.compute_metrics(...)): every value, every epoch.
    logged = list(
        csv.DictReader((tmp_path / "first" / "lightning_logs" / "version_0" / "metrics.csv").open())
    )
    columns = set(logged[0])
    for column in (
        "loss",
        "train/Combined Loss",
        "train/CE",
        "train/Logit L2",
        "val/Combined Loss",
        "val/Accuracy",
        "val/F1",
        "val/best_epoch",
    ):
        assert column in columns
    accuracies = [float(row["val/Accuracy"]) for row in logged if row["val/Accuracy"]]
    assert accuracies == pytest.approx(tracker.history)

    # The checkpoint holds the objectives' state and the tracker: restored exactly.
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    restored = example.Classifier.load_from_checkpoint(last)
    for name in ("loss", "val_loss", "val_metrics"):
        assert values(getattr(restored, name)) == values(getattr(first, name)), name
    assert restored.tracker.history == tracker.history
    assert restored.tracker.best_epoch == tracker.best_epoch

    # Resumed for a third epoch, the run reports what an uninterrupted three-epoch run reports.
    resumed, resumed_run = example.fit(3, tmp_path / "first", resume=last, **QUIET)
    uninterrupted, _ = example.fit(3, tmp_path / "uninterrupted", **QUIET)
    assert resumed_run.current_epoch == 3
    assert resumed.tracker.history == pytest.approx(uninterrupted.tracker.history, rel=1e-6)
    assert resumed.tracker.best_epoch == uninterrupted.tracker.best_epoch
    assert resumed.tracker.history[:2] == tracker.history
    for name in ("loss", "val_loss", "val_metrics"):
        assert values(getattr(resumed, name)) == pytest.approx(
            values(getattr(uninterrupted, name)), rel=1e-6
        ), name


def test_the_tracker_stops_training_when_patience_runs_out(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    example_module = example.Classifier(learning_rate=1e-6, patience=1)  # it cannot improve
    run = example.trainer(example_module, 6, tmp_path, **QUIET)
    train, validation = example.loaders()
    run.fit(example_module, train, validation)
    assert run.current_epoch < 6
    assert example_module.tracker.should_stop()


@pytest.mark.timeout(150)
def test_ddp_with_two_gloo_processes_under_torchrun(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(SCRIPT),
        "--epochs",
        "2",
        "--root",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "world size 2" in done.stdout, output
    # The synced validation values equal the same values on the whole set in one process.
    assert done.stdout.count(": equal") == 2, output
    assert "DIFFER" not in done.stdout
    assert "terminate called" not in done.stderr

"""The README's main job: ``python -m torchtally.demo`` trains, prints a table and checks sync."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from torchtally.demo import DemoConfig, main, parse_args, train
from torchtally.demo import _training as demo
from torchtally.demo._training import _shard


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the demo; past ``timeout`` seconds kill it and its worker processes, and fail.

    The demo runs in a session of its own so that a hang kills its gloo workers too,
    instead of leaving them waiting in a collective after the test has failed.
    """
    env = {**os.environ, "PYTHONWARNINGS": "error::UserWarning"}
    command = [sys.executable, "-m", "torchtally.demo", *args]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"{' '.join(args)}: still running after {timeout} s\n{stdout}{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.timeout(180)
def test_one_epoch_prints_formula_arrows_and_a_row_per_epoch() -> None:
    result = run_demo("--epochs", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "loss formula: [MSE] + 0.5 x [MAE]"
    header = next(line for line in lines if line.startswith("epoch"))
    columns = [column.strip() for column in header.split("|")]
    assert columns == [
        "epoch",
        "Combined Loss ↓",
        "MSE ↓",
        "MAE ↓",
        "Val Loss ↓",
        "Within 0.5 ↑",
        "Max Error ↓",
        "R2 ↑",
        "best epoch",
    ]
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert [row.split("|")[0].strip() for row in rows] == ["1", "2"]
    cells = [[float(cell) for cell in row.split("|")[1:]] for row in rows]
    assert all(len(row) == 8 for row in cells)
    combined, mse, mae = cells[-1][:3]
    assert combined == pytest.approx(
        mse + 0.5 * mae, abs=2e-5
    )  # the formula holds on the epoch values
    # The best epoch (from the tracker) is the one with the lowest validation loss so far.
    validation_losses = [row[3] for row in cells]
    for index, row in enumerate(cells):
        so_far = validation_losses[: index + 1]
        assert row[-1] == 1 + so_far.index(min(so_far))
    best = int(cells[-1][-1])
    assert lines[-1] == (
        f"best epoch by validation loss: {best} (validation loss {validation_losses[best - 1]:.5f})"
    )
    assert "[" not in result.stdout.split("\n", 4)[-1]  # no progress bar in the table


def test_progress_bar_is_drawn_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    train(DemoConfig(epochs=1, samples=96, batch_size=48, progress=True))
    captured = capsys.readouterr()
    assert "epoch 1 [###############...............] 1/2" in captured.err
    assert "epoch 1 [##############################] 2/2" in captured.err
    assert captured.out == ""


def test_progress_bar_shows_the_running_loss_over_the_last_batches(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 120 samples in batches of 16: seven of 16 and a last one of 8. With a window of 3 the
    # bar shows the size-weighted mean of the last 3 batches' loss; by hand, from the epoch
    # means m(s) over the n(s) samples of the first s batches: (m(s) n(s) - m(s-3) n(s-3)) /
    # (n(s) - n(s-3)).
    monkeypatch.setattr(demo, "_WINDOW", 3)
    made: list[Any] = []
    objectives = demo._objectives

    def keep() -> tuple[Any, list[Any]]:
        loss, metrics = objectives()
        made.append(loss)
        return loss, metrics

    shown: list[float] = []
    by_hand: list[float] = []
    totals: list[tuple[float, int]] = [(0.0, 0)]
    progress = demo._progress

    def spy(epoch: int, step: int, steps: int, elapsed: float, running: float) -> None:
        samples = min(step * 16, 120)
        totals.append((made[0].compute()["Combined Loss"].item() * samples, samples))
        (total, count), (before, earlier) = totals[-1], totals[max(0, len(totals) - 4)]
        by_hand.append((total - before) / (count - earlier))
        shown.append(running)
        progress(epoch, step, steps, elapsed, running)

    monkeypatch.setattr(demo, "_objectives", keep)
    monkeypatch.setattr(demo, "_progress", spy)
    train(DemoConfig(epochs=1, samples=120, batch_size=16, progress=True))
    assert len(shown) == 8
    assert shown == pytest.approx(by_hand, rel=1e-5)
    assert shown[-1] != pytest.approx(made[0].compute()["Combined Loss"].item(), rel=1e-3)
    err = capsys.readouterr().err
    assert "8/8" in err and f"loss {shown[-1]:.4f} (last 3 batches)" in err


def test_training_improves_the_loss() -> None:
    rows = train(DemoConfig(epochs=3, progress=False))
    assert rows[-1].train["Combined Loss"] < rows[0].train["Combined Loss"]


@pytest.mark.timeout(240)
def test_two_processes_give_the_single_process_values() -> None:
    result = run_demo("--epochs", "1", "--processes", "2", "--no-progress", timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== one process" in result.stdout
    assert "== 2 gloo processes" in result.stdout
    assert "synced values vs one process: equal" in result.stdout
    tables = result.stdout.split("== 2 gloo processes")
    single_row = [line for line in tables[0].splitlines() if line.strip().startswith("1 |")]
    synced_row = [line for line in tables[1].splitlines() if line.strip().startswith("1 |")]
    single = [float(cell) for cell in single_row[0].split("|")[1:]]
    synced = [float(cell) for cell in synced_row[0].split("|")[1:]]
    assert synced == pytest.approx(single, rel=1e-4, abs=1e-5)


@pytest.mark.timeout(300)
def test_two_process_runs_end_cleanly_every_time() -> None:
    # Issue 13: now and then a gloo process aborted at exit ("terminate called without an
    # active exception") after printing correct results; every run must exit 0.
    for run in range(1, 4):
        result = run_demo(
            "--epochs", "1", "--samples", "96", "--processes", "2", "--no-progress", timeout=90
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"run {run}: exit code {result.returncode}\n{output}"
        assert "synced values vs one process: equal" in result.stdout, output
        assert "terminate called" not in result.stderr, output


def test_help_explains_every_option() -> None:
    result = run_demo("--help", timeout=60)
    assert result.returncode == 0
    for option in (
        "--epochs",
        "--processes",
        "--batch-size",
        "--samples",
        "--lr",
        "--seed",
        "--no-progress",
        "--quiet",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "expected a number >= 1, found 0"),
        (["--epochs", "two"], "expected a whole number, found 'two'"),
        (["--lr", "-1"], "expected a learning rate in (0, 10)"),
        (["--processes", "4", "--batch-size", "2"], "must be at least --processes"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        # validation gets a quarter of --samples, and R2 needs 2 of them
        (["--samples", "7"], "expected a number in [8, 1000000], found 7"),
        (["--processes", "9"], "expected a number in [1, 8], found 9"),
        (["--processes", "100000"], "expected a number in [1, 8], found 100000"),
        (["--samples", str(10**12)], "expected a number in [8, 1000000], found 1000000000000"),
        (["--seed", str(2**64)], f"expected a seed in [{-(2**63)}, {2**64 - 1}], found {2**64}"),
        (["--seed", str(-(2**63) - 1)], "expected a seed in"),
        (["--seed", "1e3"], "expected a whole number, found '1e3'"),
    ],
)
def test_bad_options_get_a_message_not_a_traceback(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_extreme_accepted_options_run() -> None:
    config, _ = parse_args(["--processes", "8", "--samples", "1000000"])
    assert (config.processes, config.samples) == (8, 1_000_000)
    config, _ = parse_args(["--samples", "8", "--seed", str(2**64 - 1), "--epochs", "1"])
    rows = train(replace(config, progress=False))
    assert len(rows) == 1 and math.isfinite(rows[0].validation["Val Loss"])
    config, _ = parse_args(["--seed", str(-(2**63)), "--epochs", "1", "--samples", "8"])
    assert train(replace(config, progress=False))[0].epoch == 1


def test_a_bad_option_on_the_command_line_exits_2_without_traceback() -> None:
    result = run_demo("--epochs", "0", timeout=60)
    assert result.returncode == 2
    assert "--epochs: expected a number >= 1, found 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_shards_partition_every_batch_unevenly() -> None:
    for size in (1, 2, 7, 48):
        for world in (1, 2, 3):
            parts = [_shard(size, rank, world) for rank in range(world)]
            covered = [index for part in parts for index in range(size)[part]]
            assert covered == list(range(size))
    assert [_shard(48, rank, 2) for rank in range(2)] == [slice(0, 12), slice(12, 48)]


def test_quiet_main_returns_zero() -> None:
    assert main(["--epochs", "1", "--quiet"]) == 0

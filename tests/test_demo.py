"""The README's main job: ``python -m torchtally.demo`` trains, prints a table and checks sync."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from torchtally.demo import DemoConfig, _shard, main, parse_args, train


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
    for column in ("Combined Loss ↓", "MSE ↓", "MAE ↓", "Within 0.5 ↑", "Max Error ↓", "R2 ↑"):
        assert column in header
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert [row.split("|")[0].strip() for row in rows] == ["1", "2"]
    cells = [float(cell) for cell in rows[-1].split("|")[1:]]
    assert len(cells) == 6
    combined, mse, mae = cells[:3]
    assert combined == pytest.approx(
        mse + 0.5 * mae, abs=2e-5
    )  # the formula holds on the epoch values
    assert "[" not in result.stdout.split("\n", 4)[-1]  # no progress bar in the table


def test_progress_bar_is_drawn_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    train(DemoConfig(epochs=1, samples=96, batch_size=48, progress=True))
    captured = capsys.readouterr()
    assert "epoch 1 [###############...............] 1/2" in captured.err
    assert "epoch 1 [##############################] 2/2" in captured.err
    assert captured.out == ""


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
    ],
)
def test_bad_options_get_a_message_not_a_traceback(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


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

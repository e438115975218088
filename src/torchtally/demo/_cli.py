"""The demo's command line, and the same training under several gloo processes."""

from __future__ import annotations

import argparse
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import torch

from torchtally.demo._training import DemoConfig, EpochRow, train
from torchtally.distributed import end_distributed_run

__all__ = ["main", "parse_args"]


# -- several processes ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world: int, port: int, config: DemoConfig, results: Any) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        rows = train(config, rank, world, sys.stdout if rank == 0 else None)
        if rank == 0:
            results.put(rows)  # a SimpleQueue: written to the pipe before put() returns
    except BaseException:
        traceback.print_exc()  # the exit below skips multiprocessing's own report
        end_distributed_run(1)
        raise
    # Ends the process: returning would let the interpreter's shutdown race with gloo's
    # threads and now and then abort after correct output (see torchtally.distributed).
    end_distributed_run()


def _train_distributed(config: DemoConfig) -> list[EpochRow]:
    context = torch.multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    port = _free_port()
    workers = [
        context.Process(target=_worker, args=(rank, config.processes, port, config, results))
        for rank in range(config.processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [rank for rank, worker in enumerate(workers) if worker.exitcode != 0]
    if failed:
        raise RuntimeError(f"demo processes {failed} failed; see their messages above")
    return results.get()  # type: ignore[no-any-return]


def _largest_difference(first: list[EpochRow], second: list[EpochRow]) -> float:
    worst = 0.0
    for one, other in zip(first, second, strict=True):
        for mine, theirs in ((one.train, other.train), (one.validation, other.validation)):
            for name, value in mine.items():
                scale = max(1.0, abs(value))
                worst = max(worst, abs(value - theirs[name]) / scale)
    return worst


# -- command line ---------------------------------------------------------------------------


def _checked(text: str, kind: type[int] | type[float], accept: Any, expected: str) -> Any:
    """``text`` as a ``kind``, if ``accept`` takes it (an argparse ``type=``'s errors)."""
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, found {value}")
    return value


def _positive(text: str) -> int:
    return int(_checked(text, int, lambda value: value >= 1, "a number >= 1"))


def _within(low: int, high: int, what: str = "a number") -> Any:
    """An argparse ``type=`` taking whole numbers from ``low`` to ``high`` (``what`` they are)."""

    def checked(text: str) -> int:
        return int(
            _checked(text, int, lambda value: low <= value <= high, f"{what} in [{low}, {high}]")
        )

    return checked


_MAX_PROCESSES = 8
"""Each process is a Python interpreter with torch and a gloo group; uneven shards show with
two or three. A fixed cap, not the CPU count, so a command runs the same on every machine."""
_MIN_SAMPLES = 8
"""Validation gets a quarter of the samples, and R2 needs at least 2 of them."""
_MAX_SAMPLES = 1_000_000
"""The data lives in memory (45 MB at the cap); beyond, torch fails to allocate with a traceback."""
_SEEDS = (-(2**63), 2**64 - 1)
"""The seeds torch's generators take."""


def _learning_rate(text: str) -> float:
    return float(_checked(text, float, lambda value: 0 < value < 10, "a learning rate in (0, 10)"))


def parse_args(argv: Sequence[str] | None = None) -> tuple[DemoConfig, bool]:
    """Parse the command line into a :class:`DemoConfig` and the ``--quiet`` flag.

    Example:
        >>> from torchtally.demo import parse_args
        >>> config, quiet = parse_args(['--epochs', '2', '--processes', '2'])
        >>> config.epochs, config.processes, quiet
        (2, 2, False)
    """
    parser = argparse.ArgumentParser(
        prog="python -m torchtally.demo",
        description=(
            "Train a small model on synthetic data with the composed loss [MSE] + 0.5 x [MAE] "
            "and a few validation metrics, printing one row of exact epoch values per epoch."
        ),
    )
    parser.add_argument(
        "--epochs", type=_positive, default=3, help="passes over the data (default: 3)"
    )
    parser.add_argument(
        "--processes",
        type=_within(1, _MAX_PROCESSES),
        default=1,
        help=(
            "train under N gloo processes on this machine, each on an uneven shard of every "
            "batch, and check that the synced values equal the single-process ones (at most "
            f"{_MAX_PROCESSES}; default: 1)"
        ),
    )
    parser.add_argument(
        "--batch-size", type=_positive, default=48, help="samples per step (default: 48)"
    )
    parser.add_argument(
        "--samples",
        type=_within(_MIN_SAMPLES, _MAX_SAMPLES),
        default=1000,
        help=f"training samples, {_MIN_SAMPLES} to {_MAX_SAMPLES} (default: 1000)",
    )
    parser.add_argument(
        "--lr", type=_learning_rate, default=0.01, help="Adam learning rate (default: 0.01)"
    )
    parser.add_argument(
        "--seed",
        type=_within(*_SEEDS, "a seed"),
        default=0,
        help="seed of data and model (default: 0)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="do not draw the progress bar (drawn on stderr when it is a terminal)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing; exit code only")
    options = parser.parse_args(argv)
    if options.processes > 1 and options.batch_size < options.processes:
        parser.error(
            f"--batch-size ({options.batch_size}) must be at least --processes "
            f"({options.processes}) so that every process gets samples"
        )
    config = DemoConfig(
        epochs=options.epochs,
        processes=options.processes,
        batch_size=options.batch_size,
        samples=options.samples,
        learning_rate=options.lr,
        seed=options.seed,
        # The bar redraws one line with carriage returns: only worth it on a terminal.
        progress=sys.stderr.isatty() and not (options.no_progress or options.quiet),
    )
    return config, bool(options.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the process exit code (0 on success).

    Example:
        >>> from torchtally.demo import main
        >>> main(['--epochs', '1', '--quiet'])
        0
    """
    config, quiet = parse_args(argv)
    out = None if quiet else sys.stdout
    if config.processes == 1:
        train(config, out=out)
        return 0
    if out is not None:
        out.write("== one process\n")
    single = train(DemoConfig(**{**config.__dict__, "processes": 1}), out=out)
    if out is not None:
        out.write(
            f"\n== {config.processes} gloo processes, uneven shards, synced with tt.sync_all\n"
        )
    several = _train_distributed(config)
    difference = _largest_difference(single, several)
    agree = difference <= 1e-4
    if out is not None:
        verdict = "equal" if agree else "DIFFERENT"
        out.write(
            f"\nsynced values vs one process: {verdict} "
            f"(largest relative difference {difference:.1e})\n"
        )
    return 0 if agree else 1

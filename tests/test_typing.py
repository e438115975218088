"""The public annotations as a user's ``mypy --strict`` sees them.

Each test type-checks a small user file with this checkout's ``src`` first on
mypy's path and compares the types mypy reveals (and the errors it reports)
with the ones the library documents.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

HEADER = """\
from __future__ import annotations
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import reveal_type
import torchtally as tt


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs - targets).abs().mean(1)


def parts(outputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"loss": (outputs - targets).pow(2).mean(), "l1": (outputs - targets).abs().mean()}


"""


SNIPPETS = {
    "built": """
        metric = tt.Metric(mae, "MAE")
        reveal_type(metric)
        loss = tt.Loss(F.mse_loss, "MSE")
        reveal_type(loss)
        untyped = tt.Metric(lambda o, t: o, "Raw")
        reveal_type(untyped)
        collection = tt.MetricCollection(mae=mae)
        reveal_type(collection)
        parts_loss = tt.DictLoss(parts, "loss")
        reveal_type(parts_loss)
        summed = tt.DictLoss.summed(parts)
        reveal_type(summed)
        value: Tensor = loss(torch.zeros(2, 3), torch.zeros(2, 3))
        metric.update(torch.zeros(2, 3), torch.zeros(2, 3))
        typed: tt.Metric[Tensor, Tensor] = metric
        """,
    "refused": """
        metric = tt.Metric(mae, "MAE")
        metric.update("outputs", torch.zeros(2))
        """,
    "tracked": """
        tracked = tt.Loss(F.mse_loss, "MSE") | tt.Metric(mae, "MAE")
        reveal_type(tracked)
        reveal_type(tt.Loss(F.mse_loss, "MSE") | tt.MetricCollection(mae=mae))
        value: Tensor = tracked(torch.zeros(2, 3), torch.zeros(2, 3))
        """,
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[str], list[str]]]:
    """Per snippet, the revealed types and the errors of one ``mypy --strict`` run on all."""
    folder = tmp_path_factory.mktemp("user")
    for name, body in SNIPPETS.items():
        (folder / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir=/dev/null",
            "--python-version=3.10",
            "--no-error-summary",
            *(f"{name}.py" for name in SNIPPETS),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(SRC)},
        cwd=folder,
        timeout=110,
    )
    lines = done.stdout.splitlines()
    revealed = re.compile(r'.*Revealed type is "(.*)"')
    return {
        name: (
            [
                m.group(1)
                for line in lines
                if line.startswith(f"{name}.py:")
                for m in [revealed.match(line)]
                if m
            ],
            [line for line in lines if line.startswith(f"{name}.py:") and ": error:" in line],
        )
        for name in SNIPPETS
    }


def test_objectives_built_from_callables_need_no_annotation_and_infer_their_types(
    checked: dict[str, tuple[list[str], list[str]]],
) -> None:
    revealed, errors = checked["built"]
    assert errors == []
    assert revealed == [
        "torchtally.objectives._callables.Metric[torch._tensor.Tensor, torch._tensor.Tensor]",
        "torchtally.losses._kinds.Loss[torch._tensor.Tensor, torch._tensor.Tensor]",
        "torchtally.objectives._callables.Metric[Any, Any]",
        "torchtally.objectives._callables.MetricCollection[Any, Any]",
        "torchtally.losses._kinds.DictLoss[torch._tensor.Tensor, torch._tensor.Tensor]",
        "torchtally.losses._kinds.DictLoss[torch._tensor.Tensor, torch._tensor.Tensor]",
    ]


def test_a_metric_refuses_inputs_its_callable_does_not_take(
    checked: dict[str, tuple[list[str], list[str]]],
) -> None:
    _, errors = checked["refused"]
    assert (
        len(errors) == 1
        and '"update" of "CallableObjective" has incompatible type "str"; expected "Tensor"'
        in errors[0]
    )


def test_a_loss_tracking_a_metric_is_typed_as_a_loss(
    checked: dict[str, tuple[list[str], list[str]]],
) -> None:
    revealed, errors = checked["tracked"]
    assert errors == []
    loss = "torchtally.losses._kinds.Loss[torch._tensor.Tensor, torch._tensor.Tensor]"
    assert revealed == [f"{loss} | torchtally.losses._joined.JoinedLoss"] * 2
